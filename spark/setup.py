"""Build the native core (spark/matrix.*.so) in place.

Either of
    cd spark && python3 setup.py build_ext --inplace
    python3 spark/setup.py build_ext --inplace
runs the project's top-level setup.py from the project root, so the extension
is built exactly as for the egg/wheel.  Without arguments it defaults to
``build_ext --inplace``.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "setup.py")
    args = sys.argv[1:] or ["build_ext", "--inplace"]
    sys.argv = [script] + args
    os.chdir(root)
    sys.path.insert(0, root)
    runpy.run_path(script, run_name="__main__")
