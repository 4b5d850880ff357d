"""Architecture search for the Dense Prediction Cell."""
