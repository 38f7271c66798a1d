"""Where the project is, for the tests and their helper modules: ROOT, the folder
holding setup.py, the entry scripts, bench/ and scripts/ (a str)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
