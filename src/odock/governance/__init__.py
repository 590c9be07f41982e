"""odock.governance"""
