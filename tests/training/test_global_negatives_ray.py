"""Global negatives under Ray Train: 2 workers x B give the loss of 1 worker x 2B."""

import sys

import cloudpickle
import pytest
import torch


def _loop(config):
    import ray.train
    import ray.train.torch

    from raysv.losses import build_loss
    from raysv.training.distributed import gather_with_grad, world

    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(
        torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    )
    g = torch.Generator().manual_seed(1)
    data = torch.randn(8, 2, 6, generator=g)
    rank, size = world()
    x = data.chunk(size)[rank]
    emb = model(x.reshape(-1, 6)).reshape(x.shape[0], 2, -1)
    loss = build_loss(config["loss"])(gather_with_grad(emb)).mean()
    loss.backward()
    grad = next(model.parameters()).grad
    import json

    # Ray Train V2 keeps only metrics that come with a checkpoint: write them to a file.
    with open(f"{config['out']}.{rank}", "w") as f:
        json.dump(
            {
                "loss": float(loss.detach()),
                "grad0": float(grad.flatten()[0]),
                "batch": int(x.shape[0]),
            },
            f,
        )
    ray.train.report({})


def _fit(n_workers, loss, out):
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _loop,
        train_loop_config={"loss": loss, "out": out},
        scaling_config=ray.train.ScalingConfig(
            num_workers=n_workers, resources_per_worker={"CPU": 0.5}
        ),
    )
    trainer.fit()
    import json

    with open(f"{out}.0") as f:
        return json.load(f)


# Marked slow: in the full default suite (after the demo, MLflow-server and bench tests in
# the same Ray session) the TrainController of the 2-worker fit was seen to hang after both
# workers had reported, its monitor logging "Failed to query Ray Train Controller actor
# state" (we start Ray without the dashboard). Alone, or with tests/training, it passes in
# ~50 s. The gather itself is checked for loss and gradients in test_global_negatives.py.
@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ava", "ge2e"])
def test_two_ray_workers_equal_one_with_double_batch(loss, ray_local, tmp_path):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    one = _fit(1, loss, str(tmp_path / "one"))
    two = _fit(2, loss, str(tmp_path / "two"))
    assert one["batch"] == 8 and two["batch"] == 4
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["grad0"] == pytest.approx(one["grad0"], rel=1e-4, abs=1e-7)
