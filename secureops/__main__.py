import sys

from secureops.cli import main

sys.exit(main(sys.argv[1:]))
