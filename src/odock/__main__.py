from odock.cli import main; main()
