import sys

from icg.cli import main

sys.exit(main())
