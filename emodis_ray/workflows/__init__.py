"""End-to-end workflows: the demo and the paper's grid."""
