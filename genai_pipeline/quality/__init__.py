"""The validate stage's parts: GX suites, statistical metrics and the gate."""
