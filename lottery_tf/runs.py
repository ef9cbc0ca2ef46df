"""``python -m lottery_tf.runs ROOT``: the health check of every run under a root folder.

The command; the check is :mod:`lottery_tf.reports.health`, reading the store
with :mod:`lottery_tf.store.reader`, the code the runner uses.
"""

import sys

from lottery_tf.reports.health import main

if __name__ == "__main__":
    sys.exit(main())
