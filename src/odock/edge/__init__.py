"""odock.edge"""
