#!/usr/bin/env python
"""How far each scoring step moves a released VideoReward's scores from VideoAlign's inference.

A tiny random Qwen2-VL in VideoAlign's released layout (PEFT-wrapped ``model.pth``), the real example videos of
``../shared/data/videoalign-examples``, and the independent transcription of VideoAlign's inference in
``tests/test_videoalign_parity.py`` as the reference. Prints the largest |difference| of the normalised VQ / MQ /
TA / Overall over the videos for the project's scorer with the released scheme, with one step of the project's
own scheme swapped in, and with the project's scheme whole (what scoring did before schemes were carried).

    python benchmarks/videoalign_parity.py [--max-frame-pixels 100352]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-frame-pixels", type=int, default=128 * 28 * 28)
    args = ap.parse_args()
    import videoalign_release as parity  # the reference transcription the parity test uses

    shared = ROOT.parent / "shared" / "data"

    with tempfile.TemporaryDirectory() as tmp:
        world = parity.build_world(Path(tmp), shared)
        folder, weights, conf = parity.write_release(world, "release", "peft",
                                                      {"max_frame_pixels": args.max_frame_pixels})
        expected = parity.reference_scores(world, weights, conf)
        rows = [("released scheme (template, 1d positions, frame rule, float resize)", {}),
                ("  but the project's prompt template", {"template": "project"}),
                ("  but M-RoPE 3-D positions", {"positions": "mrope"}),
                ("  but the uint8 resize kernel", {"resize": "uint8"}),
                ("  but the project's frame rule", {"frame_rule": "project"}),
                ("the project's scheme whole", {"template": "project", "positions": "mrope", "resize": "uint8",
                                                "frame_rule": "project"})]
        print(f"{len(world['paths'])} videos, max |project - VideoAlign| of normalised scores")
        print(f"{'scoring':<70} {'VQ':>8} {'MQ':>8} {'TA':>8} {'Overall':>8}")
        for name, change in rows:
            got = parity.project_scores(folder, world["paths"], world["prompts"], **change)
            diff = np.abs(got - expected).max(axis=0)
            print(f"{name:<70} " + " ".join(f"{d:8.5f}" for d in diff))


if __name__ == "__main__":
    main()
