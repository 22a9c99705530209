import sys

from gru_lib.cli import main

sys.exit(main())
