"""The research agents and the `rdquant` command line (which mounts the quant core's and the sandbox's commands)."""
