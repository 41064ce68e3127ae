"""Session fixtures that start real servers on 127.0.0.1 (filled by the backends work)."""
