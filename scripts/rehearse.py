"""Run the anyword command line or the demo with the stand-in SAM checkpoints named in ``ANYWORD_REHEARSAL_SAM``
(their local URL and sha256; see ``anyword/rehearsal/standins.py``) in place of the official ones. Everything else
(the Hugging Face hub at ``HF_ENDPOINT``, the caches, the loaders) is the real path.

    python scripts/rehearse.py cli segment photo.jpg "a red cup" --preset sd15 --out result/
    python scripts/rehearse.py app --preset sd15 --port 7860
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("cli", "app"):
        print("usage: python scripts/rehearse.py cli|app ARGS...", file=sys.stderr)
        return 2
    from anyword.rehearsal.standins import apply_sam_rehearsal

    apply_sam_rehearsal()
    if sys.argv[1] == "cli":
        from anyword.cli import main as cli

        return cli(sys.argv[2:])
    from demo.app import main as app

    app(sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
