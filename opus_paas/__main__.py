import sys

from opus_paas.control.cli import main

sys.exit(main())
