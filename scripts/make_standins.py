"""Write toy stand-ins of every published model the presets and segmenters name (same file trees, names, config keys
and weight formats as the real repositories; seeded random weights) and, with ``--serve``, serve them as a Hugging
Face hub on 127.0.0.1 to rehearse the whole download-and-load path offline:

    python scripts/make_standins.py /tmp/standins --serve
    # then, in another shell, with the printed variables:
    HF_ENDPOINT=http://127.0.0.1:PORT HF_HOME=/tmp/hf ANYWORD_REHEARSAL_SAM='...' \\
        python scripts/rehearse.py cli segment assets/coffee.png "a red cup" --preset sd15 --out /tmp/out
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from anyword.rehearsal.hub import LocalHub
    from anyword.rehearsal.standins import REHEARSAL_SAM, write_stand_ins

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the stand-ins into")
    parser.add_argument("--serve", action="store_true", help="serve them as a hub until interrupted")
    args = parser.parse_args()
    written = write_stand_ins(args.out)
    for repo, folder in written.repos.items():
        print(f"{repo}: {folder} ({sum(1 for p in folder.rglob('*') if p.is_file())} files)")
    for path, file in written.files.items():
        print(f"{path}: {file}")
    if not args.serve:
        return
    hub = LocalHub(written.repos, written.files).start()
    print(f"\nHF_ENDPOINT={hub.url}\n{REHEARSAL_SAM}='{written.sam_rehearsal(hub.url)}'")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
