"""megastack.checkpoint"""
