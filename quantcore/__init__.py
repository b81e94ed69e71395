"""rdquant's quant core: market data, the factor expression engine, and (later) the research pipeline.

Importing this package has no side effects: there is no global registry or `init()`; every function
takes the objects it works on (a `Panel`, an `Evaluator`, ...) explicitly.
"""

__version__ = "0.1.0"
