"""megastack.runtime"""
