"""Run by torchrun in test_train.py: train as one rank, then write this rank's weights digest; with
EVALUATE=1 in the environment, then run the evaluate stage as this rank too."""

import hashlib
import json
import os
import sys

from pipeline import config
from pipeline.runtime.dist import from_environment
from pipeline.student import evaluate_run, train
from tests.helpers import PIPELINE_YAML, SMOKE_YAML

if __name__ == "__main__":
    out, overrides = sys.argv[1], sys.argv[2:]
    env = from_environment()
    cfg = config.load([PIPELINE_YAML, SMOKE_YAML], overrides)  # as the test's make_config
    summary = train.run(cfg, env)
    if os.environ.get("EVALUATE") == "1":
        evaluate_run.run(cfg, env)
    digest = hashlib.sha256()
    for name, tensor in sorted(summary.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    with open(f"{out}/rank{env.rank}.json", "w") as f:
        json.dump({"digest": digest.hexdigest(), "steps": summary.progress.step, "epoch": summary.progress.epoch}, f)
