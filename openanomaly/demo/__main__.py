"""``python -m openanomaly.demo``: the demo series writer (:mod:`openanomaly.demo.writer`)."""

import sys

from openanomaly.demo.writer import main

sys.exit(main())
