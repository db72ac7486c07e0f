"""Runtime backends behind one protocol: native, crun, runc."""
