"""serpensctl: the operator's command line."""
