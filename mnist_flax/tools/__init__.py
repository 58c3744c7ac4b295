"""The commands people run on a trained model (evaluate, predict, report, benchmark) and what they share."""
