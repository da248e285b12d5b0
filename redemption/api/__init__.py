"""HTTP routes of the redemption service, one module per resource."""
