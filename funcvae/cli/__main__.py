import sys

from funcvae.cli import main

sys.exit(main())
