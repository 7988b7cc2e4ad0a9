"""The recipes: tpu-trainer-* --config=configs/NAME.py (a checkout) or --config=NAME.py."""
