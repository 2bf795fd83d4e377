import sys

from gbcosface.cli import main

sys.exit(main())
