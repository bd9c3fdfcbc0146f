"""Local (single-machine) mode: the GPUs of this machine and which server holds which."""
