"""A fixed English passage (about 1.8k tokens with the SmolLM2 tokenizer), written for this project: the text on
which ``bench/accuracy.py`` compares quantized weights with dense ones (perplexity, greedy continuations)."""

_WRAPPED = """
The history of bridges is, in a quiet way, the history of how people learned to trust the ground they could not see.
The oldest crossings were nothing more than a fallen tree laid over a stream, or a row of flat stones placed where
the water ran shallow. Such crossings were cheap and easy to build, but they failed with every flood, and the people
who used them had to rebuild them again and again. Over many generations, builders noticed that some shapes lasted
longer than others, and that the way a load travelled through a structure mattered as much as the strength of the
material itself.

The arch was the first great answer to this problem. A stone arch works because each stone presses against its
neighbours, so that the weight of the road and the traffic above it is turned into a force that pushes outward and
downward into the banks. Stone is very strong when it is squeezed and very weak when it is pulled, and the arch
keeps almost every stone in compression. The Romans built arches on a scale that had not been seen before. Their
aqueducts carried water across wide valleys for many miles, and some of their bridges are still used by cars and
lorries today, nearly two thousand years after the last mason laid down his tools. The secret was not only the shape
but also the foundations. Roman engineers drove wooden piles into the riverbed and built cofferdams, walls of clay
and timber that kept the water out while the piers were raised in the dry.

After the fall of the empire, much of this knowledge was scattered, and for centuries bridges in Europe were built
by religious orders, by towns, and by wealthy merchants who hoped to profit from the tolls. Medieval bridges were
often crowded with houses, shops, and chapels. Old London Bridge carried a whole street of buildings, and its narrow
arches slowed the river so much that the water above it sometimes froze in hard winters. Boatmen who tried to pass
beneath it at the wrong moment of the tide risked their lives, and a popular saying held that the bridge was made
for wise men to go over and fools to go under.

The industrial age changed everything. Iron, and later steel, could be made in large quantities, and unlike stone
they could resist pulling as well as pushing. The first iron bridge was built in England in the late eighteenth
century, over a river in a valley full of furnaces. Its builders did not yet understand the new material, so they
joined the iron pieces with the same kinds of joints that carpenters used for wood. It still stands, and it is now a
museum piece, visited by people who want to see the place where a new era of engineering began.

With iron and steel came new forms. The truss, a frame of triangles, spreads a load among many slender members, some
in tension and some in compression. Railways needed bridges that could carry heavy locomotives across wide rivers
and deep gorges, and engineers covered the land with trusses of every pattern. Not all of them succeeded. Some
collapsed under trains, others were torn apart by storms, and each failure was studied closely. Engineers began to
calculate forces with growing care, to test materials in laboratories, and to write down rules that others could
follow. The profession of the civil engineer, with its handbooks, its examinations, and its sense of public duty,
grew out of these hard lessons.

The suspension bridge is perhaps the most elegant of all the forms. Its deck hangs from cables that pass over tall
towers and are anchored firmly in the ground at each end. The cables are pulled tight by the weight they carry, and
steel wire is extraordinarily strong in tension, so a suspension bridge can span a much greater distance than any
arch or truss. The great suspension bridges of the nineteenth and twentieth centuries became symbols of their
cities, photographed, painted, and celebrated in songs. Yet they also taught engineers a painful lesson about wind.
A bridge that is light and flexible can begin to sway, and if the wind pushes it at just the right rhythm the motion
can grow until the structure tears itself apart. One famous bridge twisted and rolled for months before it finally
broke in a moderate wind, and the film of its collapse is still shown to engineering students as a warning. After
that, designers tested models of their bridges in wind tunnels and made the decks stiffer and more aerodynamic.

Concrete brought yet another set of possibilities. Plain concrete, like stone, is strong in compression and weak in
tension, but when steel bars are cast inside it the two materials work together. Later, engineers learned to stretch
the steel before the concrete hardened, so that the finished beam was already squeezed and could carry heavy loads
without cracking. Prestressed concrete made it possible to build long, slender spans at modest cost, and today it is
the most common material for highway bridges around the world. Drivers cross thousands of these bridges every day
without noticing them at all, which is perhaps the highest compliment a bridge can receive.

The cable-stayed bridge, which became popular in the second half of the twentieth century, looks at first like a
suspension bridge, but it works differently. Its cables run directly from the towers to the deck in straight lines,
often arranged like the strings of a harp or spreading out like a fan. Because each cable holds up a part of the
deck on its own, the structure does not need the huge anchorages of a suspension bridge, and it can be built outward
from the towers piece by piece, without any support from below. This makes it well suited to wide rivers and busy
harbours where ships must keep passing during construction.

Modern bridge building depends on computers as much as on steel and concrete. Engineers model the behaviour of a
structure under traffic, wind, temperature, and earthquakes before a single foundation is dug. Sensors placed on
finished bridges report how they move and how their materials age, so that small problems can be found and repaired
before they become dangerous. Even so, the basic ideas remain the ones that the earliest builders discovered by
trial and error: find firm ground, choose a shape that keeps each material doing what it does best, and respect the
forces of water and wind.

Bridges also have a meaning beyond their function. They join communities that were once separated, shorten journeys
that once took days, and carry the roads along which goods, ideas, and people move. In many languages the word for
bridge is used for anything that connects two sides of a divide, whether the divide is a river, a quarrel, or a
difference of opinion. When a great bridge opens, crowds often walk across it before the first car is allowed to
pass, as if to claim it for themselves. And when an old bridge is finally replaced, people sometimes gather to watch
it come down, remembering the times they crossed it and the places it led them to.

The next generation of bridges will face new challenges. Traffic is heavier than the builders of the last century
imagined, storms are becoming more intense, and many older structures are reaching the end of the lives for which
they were designed. Engineers are experimenting with new materials, such as fibre-reinforced plastics and
high-performance concretes, and with methods that allow whole spans to be built in a factory and lifted into place
in a single night. Whatever form these bridges take, they will continue an old conversation between human ambition
and the stubborn facts of gravity, weather, and time.

Behind every bridge there is also a story of the people who built it. Before machines did most of the heavy work,
thousands of labourers dug foundations by hand, hauled stone on carts, and climbed high scaffolds with no harness to
catch them if they fell. Workers who built the deep foundations of some early bridges laboured inside pressurised
chambers sunk beneath the riverbed, and when they returned to the surface too quickly many of them suffered from a
mysterious illness that bent their joints with pain. Doctors later understood that the sickness came from gas
dissolved in the blood, the same condition that threatens divers who rise too fast from the deep sea. The chief
engineer of one famous bridge was himself crippled by it, and he directed the rest of the work from a window in his
house, watching through a telescope while his wife carried his instructions to the site and learned enough
mathematics to answer the questions of the contractors.

Today the work is safer, but it is no less demanding. A large bridge may take a decade to plan and several years to
build, and it must satisfy the demands of shipping companies, environmental agencies, city planners, and the people
who live nearby. Architects argue with engineers about the shape of the towers, accountants argue with both of them
about the cost, and in the end the finished structure is a compromise among many voices. When it works well, none of
this is visible. The traveller sees only a line drawn across the sky, a road that leaps from one shore to the other,
and perhaps, on a clear evening, the lights of the cables reflected in the water below.
"""

# paragraphs joined back into single lines (the wrapping above is only for reading)
TEXT = "\n\n".join(" ".join(p.split("\n")) for p in _WRAPPED.strip().split("\n\n"))
