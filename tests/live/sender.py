"""The live tests' sender: the package's bounded raw sender, run as a script
(`sender.py IFACE FILE [--pps N] [--max-seconds S]`). Only for synthetic
captures made by the tests, only onto a test veth; see flowprobe.probe.sender."""
from flowprobe.probe.sender import main

if __name__ == "__main__":
    raise SystemExit(main())
