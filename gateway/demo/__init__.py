"""Demo Salesforce and Odoo servers with a generated Italian B2B data set."""
