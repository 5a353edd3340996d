# Hardware-in-the-loop: the pytest plugin and rig files (see README).
