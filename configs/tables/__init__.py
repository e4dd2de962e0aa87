"""Tables to reproduce: each file lists the cells (runs) of a paper's figure or table."""
