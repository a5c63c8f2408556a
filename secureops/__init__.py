"""secureops: the one door to root for Opus, kept small enough to read in one sitting.

A fixed table of verbs (verbs.TABLE), each taking an app *name* and, for some, a typed
JSON spec on standard input; every path is derived here from the name and the root-owned
layout. Stdlib only; imports nothing from opus_paas. See README.md for the threat model.
"""

__version__ = "1"
