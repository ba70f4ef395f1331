"""Regenerate the vendored KubeRay CRD schemas in this directory from a KubeRay checkout.

    git clone https://github.com/ray-project/kuberay /tmp/kuberay && git -C /tmp/kuberay checkout v1.7.0
    python tests/data/deploy/vendor_kuberay_crds.py /tmp/kuberay v1.7.0

For each CRD it keeps the ``openAPIV3Schema`` of the ``v1`` version only, unchanged except that
``description`` texts are dropped (they are most of the file's size and carry no constraint), and
writes it as JSON next to this script together with the source path and commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CRDS = {
    "rayclusters": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "rayjobs": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
}
HERE = Path(__file__).resolve().parent


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        # a property that is *named* "description" is kept; only the annotation keyword goes
        return {k: strip_descriptions(v) if k != "properties" else {pk: strip_descriptions(pv) for pk, pv in v.items()}
                for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(x) for x in node]
    return node


def main(checkout: str, tag: str) -> None:
    repo = Path(checkout)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", f"{tag}^{{commit}}"], capture_output=True,
                            text=True, check=True).stdout.strip()
    for name, rel in CRDS.items():
        crd = yaml.safe_load(subprocess.run(["git", "-C", str(repo), "show", f"{tag}:{rel}"], capture_output=True,
                                            text=True, check=True).stdout)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out = {"source": {"repository": "https://github.com/ray-project/kuberay", "tag": tag, "commit": commit,
                          "path": rel, "crd": crd["metadata"]["name"], "version": "v1",
                          "kind": crd["spec"]["names"]["kind"], "licence": "Apache-2.0",
                          "modification": "description fields removed"},
               "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"])}
        target = HERE / f"kuberay-{tag}-{name}-v1.json"
        target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"{target.name}: {target.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
