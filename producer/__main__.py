import sys

from producer import interrupts
from producer.cli import main

interrupts.install()  # here, not in main(): a program's signals are its own, not its callers'
sys.exit(main())
