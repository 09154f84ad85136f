"""``python -m fedwon.cli``: the ``fedwon`` command without its installed script."""

from fedwon.cli import main

main()
