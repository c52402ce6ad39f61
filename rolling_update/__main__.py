import sys

from rolling_update._cli.main import main

sys.exit(main())
