"""Global negatives: W workers x batch B see the same loss and gradient as 1 x W*B."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raysv.losses import build_loss
from raysv.training.distributed import gather_with_grad


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 2, 6, generator=g)  # 8 dialogues x 2 utterances x 6 features


def _loss(model, loss_fn, x):
    emb = model(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)
    return loss_fn(gather_with_grad(emb)).mean()


def _worker(rank, world, port, name, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    loss_fn = build_loss(name)
    x = _data().chunk(world)[rank]
    loss = _loss(model, loss_fn, x)
    loss.backward()
    q.put((rank, float(loss.detach()), [p.grad.numpy().copy() for p in model.parameters()]))
    dist.barrier()
    dist.destroy_process_group()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["ava", "ge2e", "aproto"])
def test_two_workers_match_one_worker_with_double_batch(name):
    model = _model()
    ref = _loss(model, build_loss(name), _data())
    ref.backward()
    ref_grads = [p.grad for p in model.parameters()]

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = _port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, name, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get() for _ in range(2)]
    for p in procs:
        p.join(timeout=60)
    for _, loss, grads in results:
        assert loss == pytest.approx(float(ref), rel=1e-5)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(torch.from_numpy(g), r, atol=1e-6), (
                (torch.from_numpy(g) - r).abs().max()
            )
