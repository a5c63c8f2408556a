import sys

from opus_paas.cli import main

sys.exit(main())
