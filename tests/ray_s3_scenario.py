"""generate on the Ray engine with products and out in a bucket, run by tests/test_s3.py as
`python -m tests.ray_s3_scenario ARGS.json` inside a loopback-only network namespace (Ray binds every
interface: see tests/ray_scenarios.py). The test module's SeaweedFS listens on the host's loopback,
which the namespace does not see, so this script starts its own in there. It downloads the batch the
actors published and writes the run's summaries to the report file for the test to judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(args: dict) -> None:
    import ray
    import torch

    torch.set_num_threads(1)
    from pipelines import generate
    from pipelines.engines import RayConfig
    from rf1m import storage
    from tests.conftest import small_config
    from tests.test_s3 import seaweedfs

    tmp = Path(args["tmp"])
    (tmp / "weed").mkdir()
    with seaweedfs(tmp / "weed") as s3:
        storage.upload_tree(args["products"], f"{s3}/products")
        # started after the server, so the actors inherit its credentials from this environment
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
        cfg = small_config(tmp, Path(args["model"]), products=f"{s3}/products", out=f"{s3}/shards",
                           engine="ray", ray=RayConfig(actors=2))
        report = {"run": generate.run(cfg), "rerun": generate.run(cfg)}
        ray.shutdown()
        storage.download_tree(f"{s3}/shards/{cfg.batch_id}", tmp / "pulled")
    Path(args["report"]).write_text(json.dumps(report))


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
