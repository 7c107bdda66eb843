"""flowscope: who is talking to this server, live and in history."""
