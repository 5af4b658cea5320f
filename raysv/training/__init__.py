"""Training: configs, Ray Data input pipelines, worker loops (``*_worker``) and drivers."""
