"""Robot pieces shared by task families (one small module per robot)."""
