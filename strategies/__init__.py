"""What users extend: acquisition strategies (``strategies.acquisition``) and init strategies (``strategies.init``)."""
