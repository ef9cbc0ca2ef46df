"""``python -m lottery_tf.report PATH [PATH ...] --out=FOLDER [--curve_levels=0,3,7]``: tables and figures over runs.

The command; the reports themselves are :mod:`lottery_tf.reports`.
"""

import sys

from lottery_tf.reports.cli import main

if __name__ == "__main__":
    sys.exit(main())
