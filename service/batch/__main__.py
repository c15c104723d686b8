import sys

from service.batch.cli import main

sys.exit(main())
