from sdvg.cli import main

raise SystemExit(main())
