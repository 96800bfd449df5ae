"""``python -m lowrank``: what ``torchrun -m lowrank`` runs in every process."""

import os
import sys

from lowrank.cli import interrupt_quietly, main

with interrupt_quietly():
    from lowrank.errors import LowrankError
    from lowrank.registry import families
    from lowrank.runs.distributed import check_command

if __name__ == "__main__":
    try:
        check_command(sys.argv[1:], [f.name for f in families() if f.torchrun])
    except LowrankError as exc:
        if os.environ.get("RANK", "0") == "0":  # one line, not one per rank
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    main(prog_name="lowrank")
