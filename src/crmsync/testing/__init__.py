"""What the tests and the demos share that is no part of the engine: ``tryton`` (a local
Tryton server built, bootstrapped, run and stopped on demand) and ``conformance`` (the
contract harness every connector passes)."""
