"""What the tests share: the fake upstream, raw misbehaving peers, the running stack, the real
command in a subprocess, and the external tools. conftest.py loads the fixtures as plugins."""
